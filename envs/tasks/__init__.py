"""Task envs. Importing this package registers every env in it (``make_env("math")``)."""

from envs.tasks import math as math  # noqa: F401  (registers "math")
