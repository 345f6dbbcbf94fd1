"""The trainer's one base exception; entry points turn it into a message and exit code."""


class TrainerError(Exception):
    """A problem the user can fix: bad data, a missing model path, an unusable run folder."""
