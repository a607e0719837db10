"""Loss curves (and KL and margin for KTO) as labelled sparklines that follow the run."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Sparkline

from synaptic_tui.monitor import Series

TITLES = {"loss": "loss", "eval_loss": "eval loss", "kl": "KL", "rewards/margins": "margin"}


def _id(key: str) -> str:
    return "curve-" + key.replace("/", "-").replace("_", "-")


class Curves(Vertical):
    DEFAULT_CSS = """
    Curves { height: auto; }
    Curves Label { width: 100%; color: $text-muted; }
    Curves Sparkline { height: 3; margin-bottom: 1; }
    """

    def __init__(self, keys: tuple[str, ...], **kwargs) -> None:
        super().__init__(**kwargs)
        self.keys = keys

    def compose(self) -> ComposeResult:
        for key in self.keys:
            yield Label(TITLES.get(key, key), id=_id(key) + "-label")
            yield Sparkline([], id=_id(key))

    def show(self, series: dict[str, Series]) -> None:
        for key in self.keys:
            values = series[key].values if key in series else []
            spark = self.query_one(f"#{_id(key)}", Sparkline)
            if len(values) != len(spark.data or ()) or (values and spark.data and values[-1] != spark.data[-1]):
                spark.data = list(values)
                label = TITLES.get(key, key)
                if values:
                    label += f" {values[-1]:.4f} (min {min(values):.4f})"
                self.query_one(f"#{_id(key)}-label", Label).update(label)
