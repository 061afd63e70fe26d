"""No pages: the benchmarks drive models, workers and WebSockets only."""

from __future__ import annotations

urlpatterns: list[object] = []
