"""One screen per wizard step, plus the dialogs."""
