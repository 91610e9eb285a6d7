"""Runs scenarios against stores: worlds of ranks, their fates, the command line."""

from .world import Fate, RankFn, RankResult, run_world

__all__ = ["Fate", "RankFn", "RankResult", "run_world"]
