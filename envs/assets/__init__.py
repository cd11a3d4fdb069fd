"""MuJoCo model files of o2o's built-in tasks."""
