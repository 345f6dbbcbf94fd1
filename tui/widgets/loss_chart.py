"""Train and validation loss as two labelled sparklines (no plotting dependency)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, Sparkline


class LossSeries(Horizontal):
    def __init__(self, title: str, id: str):
        super().__init__(id=id, classes="loss-series")
        self.series_title = title
        self.values: list[float] = []

    def compose(self) -> ComposeResult:
        yield Label(self.series_title, classes="loss-title")
        yield Sparkline([], classes="loss-line")
        yield Label("–", classes="loss-last")

    def add(self, value: float) -> None:
        self.values.append(float(value))
        self.query_one(Sparkline).data = list(self.values)
        low = min(self.values)
        self.query_one(".loss-last", Label).update(f"{value:.4f} (min {low:.4f})")


class LossChart(Vertical):
    def __init__(self) -> None:
        super().__init__(id="loss-chart")

    def compose(self) -> ComposeResult:
        yield LossSeries("train loss", id="train-loss")
        yield LossSeries("val loss", id="val-loss")

    def add_train(self, value: float) -> None:
        self.query_one("#train-loss", LossSeries).add(value)

    def add_val(self, value: float) -> None:
        self.query_one("#val-loss", LossSeries).add(value)
