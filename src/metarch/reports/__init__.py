"""Reports: plots and tables of data, training runs and searches."""

from metarch.reports.episodes import episode_canvas, save_episode_grid

__all__ = ["episode_canvas", "save_episode_grid"]
