"""Videos the evaluator is validated on besides ground truth: what a small
autoencoder does to a clip (blur, colour shift, lost resolution), and the
baselines that must score at the bottom (noise, a blank screen)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def autoencoder_like(frames: np.ndarray, blur_sigma: float = 1.0, colour_shift: tuple[float, float, float] = (8, -6, 6),
                     gain: float = 0.95, downsample: int = 4) -> np.ndarray:
    """Mild Gaussian blur, a colour shift and gain, and `downsample`x area
    down-sampling then bilinear up-sampling. uint8 [T, H, W, 3] -> same"""
    x = frames.astype(np.float32)
    if blur_sigma > 0:
        x = ndimage.gaussian_filter(x, sigma=(0, blur_sigma, blur_sigma, 0))
    if downsample > 1:
        t, h, w, c = x.shape
        small = x[:, : h // downsample * downsample, : w // downsample * downsample]
        small = small.reshape(t, h // downsample, downsample, w // downsample, downsample, c).mean((2, 4))
        x = ndimage.zoom(small, (1, h / small.shape[1], w / small.shape[2], 1), order=1, mode="nearest", grid_mode=True)
    x = x * gain + np.asarray(colour_shift, np.float32)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def noise_video(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Uniform random pixels, new every frame. -> uint8 [T, H, W, 3]"""
    return np.random.default_rng(seed).integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)


def blank_video(num_frames: int, height: int, width: int, value: int = 0) -> np.ndarray:
    """-> uint8 [T, H, W, 3] of one grey level"""
    return np.full((num_frames, height, width, 3), value, np.uint8)
