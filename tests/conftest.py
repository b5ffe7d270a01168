"""Test-wide settings: no display, no sound card, headless OpenGL."""

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("PYGLET_HEADLESS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
