"""The evaluator's settings, in one typed config (defaults live here only)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvalConfig:
    # --- finding objects -----------------------------------------------------------
    max_colour_distance: float = 40.0  # Delta E beyond which a pixel has no colour name
    min_area_fraction: float = 0.002  # smallest object, fraction of the frame's pixels
    max_thinness: float = 5.0  # area / (pi r_in^2) above this is a ring or smear (a disc is 1)
    wrap_pad: float = 0.5  # objects up to this share of min(H, W) are seen whole across an edge
    edge_ring_px: int = 4  # how far past a blob its soft (blurred) edge is counted
    min_presence: float = 0.3  # a colour is an object when found in this share of frames
    min_background_share: float = 0.3  # a frame's background covers at least this share of it
    background_margin_px: int = 3  # pixels near any object are left out of flicker
    # --- classifying motion (speeds in min(H, W) per second) ----------------------------
    stop_speed: float = 0.04  # slower than this (path length per second) is standing still
    grow_rate: float = 0.2  # |d log(area) / dt| above this (per second) is growing/shrinking
    straightness: float = 0.7  # |net displacement| / path length above this is a straight motion
    orbit_turn_rate: float = 90.0  # degrees per second: turning one way this fast is circling
    # (drawn orbits take 1.4-2.2 s a turn, 160-260 deg/s)
    bounce_sway: float = 0.35  # bounce: horizontal range at most this share of the vertical
    # --- scores ---------------------------------------------------------------------
    smoothness_scale: float = 0.025  # median |jerk| (min(H, W) per frame^3) scoring exp(-1); a
    # drawn orbit's own jerk scores ~0.9, a centre jittering by 1% of the frame ~0.3
    flicker_scale: float = 0.1  # mean |frame step| on static background that scores 0 stability
    background_tolerance: float = 10.0  # Delta E from the clip's background that still counts as stable
    # --- long streams and prompt switches (seconds) -----------------------------------
    reference_seconds: float = 10.0  # drift is measured against this first window
    window_seconds: float = 10.0  # length of each later window
    window_every_seconds: float = 60.0  # a window starts at each multiple of this (minutes 1, 2, ...)
    switch_settle_seconds: float = 0.5  # frames this soon after a prompt switch are not scored
    batch_frames: int = 64  # frames analysed at once (bounds memory on long videos)
