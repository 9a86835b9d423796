"""Visual distractions applied to MuJoCo scenes, independent of the agent (see `color.py`)."""
from distracting_control.color import (COLOR_SETS, DEFAULT_COLOR_CONFIG, ColorBox, ColorDistractor, color_boxes,
                                       color_step_std)

__all__ = ['COLOR_SETS', 'DEFAULT_COLOR_CONFIG', 'ColorBox', 'ColorDistractor', 'color_boxes', 'color_step_std']
