"""Reports: figures (the one plotting module), HTML pages, the leaderboard."""
