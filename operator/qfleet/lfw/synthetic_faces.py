"""Synthetic faces: identities made of parameters, rendered under per-image variation.

An identity is a set of numbers (face outline, skin tone and texture, moles, eyes, brows, nose,
mouth, hair, beard, glasses). An image renders one identity under a variation (pose, yaw,
expression, gaze, lighting, background, camera response, blur, sensor noise) as an aligned RGB
crop whose eyes, nose and mouth sit near insightface's canonical 112x112 landmark positions.

Rendering is vectorised over a batch: every pixel is mapped back through the image's pose into
face coordinates, and each part is drawn as anti-aliased shapes. Small parts are evaluated only
inside the pixel window that the batch's poses can move them to, which keeps a 112x112 image
around a millisecond. Randomness comes only from the generators passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]
CANONICAL_SIZE = 112
# The pose rotates and scales about this point of the canonical crop (between the eyes and mouth).
_CENTRE_U, _CENTRE_V = 56.0, 60.0
_COLOUR_KEYS = frozenset(
    {
        "skin",
        "iris",
        "brow_colour",
        "lip",
        "hair",
        "glasses_frame",
        "background",
        "blob_colour_0",
        "blob_colour_1",
    }
)
_F32 = np.float32


def _constant(rgb: Sequence[float]) -> Array:
    return np.asarray(rgb, dtype=_F32).reshape(1, 3, 1, 1)


_SCLERA = _constant([236, 232, 226])
_PUPIL = _constant([10, 10, 12])
_MOUTH_INSIDE = _constant([60, 20, 25])
_BLUSH = _constant([220, 90, 90])


@dataclass(frozen=True)
class Identity:
    """One synthetic person: a name (``<split>-<index>``) and the parameters that draw the face."""

    name: str
    params: dict[str, Array]


# ----------------------------------------------------------------------------------------------
# Parameters

_SKIN_TONES = np.array([[246, 214, 190], [225, 180, 150], [196, 146, 108], [150, 100, 70], [98, 64, 44]])
_HAIR_COLOURS = np.array(
    [[28, 24, 24], [62, 40, 28], [112, 74, 44], [196, 160, 100], [150, 66, 34], [168, 166, 160], [90, 84, 80]]
)
_IRIS_COLOURS = np.array(
    [[84, 52, 30], [40, 30, 26], [70, 112, 170], [76, 120, 72], [118, 128, 140], [128, 98, 52]]
)
_FRAME_COLOURS = np.array([[20, 20, 20], [120, 80, 40], [180, 180, 190], [150, 30, 40], [30, 50, 120]])


def _palette(rng: np.random.Generator, palette: Array, jitter: float) -> Array:
    """A mix of two palette entries plus jitter, so colours are continuous, not a handful of classes."""
    first, second = rng.integers(0, len(palette), size=2)
    mix = rng.uniform(0, 0.5)
    colour = palette[first] * (1 - mix) + palette[second] * mix
    jittered: Array = np.clip(colour + rng.normal(0, jitter, size=3), 0, 255)
    return jittered


def _skin_tone(rng: np.random.Generator) -> Array:
    position = rng.uniform(0, len(_SKIN_TONES) - 1)
    low = int(position)
    high = min(low + 1, len(_SKIN_TONES) - 1)
    colour = _SKIN_TONES[low] + (position - low) * (_SKIN_TONES[high] - _SKIN_TONES[low])
    tone: Array = np.clip(colour + rng.normal(0, 8, size=3), 0, 255)
    return tone


def sample_identity(rng: np.random.Generator, name: str) -> Identity:
    """Draw one identity's parameters from ``rng`` (always in the same order)."""
    u = rng.uniform
    skin = _skin_tone(rng)
    hair = _palette(rng, _HAIR_COLOURS, 10)
    bald = rng.uniform() < 0.08
    params: dict[str, Any] = {
        # Face outline: a superellipse whose lower half narrows towards the chin.
        "face_cy": u(58, 64),
        "face_a": u(36, 46),
        "face_b_top": u(50, 60),
        "face_b_bottom": u(44, 58),
        "face_power": u(1.8, 2.8),
        "jaw_taper": u(0.0, 0.45),
        "skin": skin,
        # Skin texture: three low-frequency waves; up to three moles; blush.
        "texture_freq": rng.uniform(0.08, 0.3, size=3),
        "texture_angle": rng.uniform(0, 2 * np.pi, size=3),
        "texture_phase": rng.uniform(0, 2 * np.pi, size=3),
        "texture_amp": rng.uniform(2, 9, size=3),
        "mole_u": rng.uniform(28, 84, size=3),
        "mole_v": rng.uniform(40, 100, size=3),
        "mole_r": rng.uniform(0.9, 2.2, size=3) * (rng.uniform(size=3) < 0.45),
        "cheek_blush": u(0, 0.25),
        # Eyes.
        "eye_half_spacing": u(15.5, 19.5),
        "eye_y": u(49.5, 54),
        "eye_w": u(5.2, 8.5),
        "eye_h": u(2.2, 4.0),
        "eye_tilt": u(-0.18, 0.18),
        "iris_r": u(2.2, 3.4),
        "iris": _palette(rng, _IRIS_COLOURS, 12),
        # Brows.
        "brow_gap": u(6, 11),
        "brow_len": u(6, 10.5),
        "brow_thick": u(1.0, 3.2),
        "brow_arch": u(-0.5, 2.5),
        "brow_tilt": u(-0.25, 0.25),
        "brow_colour": np.clip(hair * u(0.5, 0.95), 0, 255),
        # Nose.
        "nose_y": u(68, 76),
        "nose_w": u(3.5, 7.0),
        "nostril_r": u(1.0, 2.0),
        "nose_bridge": u(0.15, 0.5),
        # Mouth.
        "mouth_y": u(86, 96),
        "mouth_w": u(8, 15),
        "lip_upper": u(1.3, 3.4),
        "lip_lower": u(1.8, 4.4),
        "mouth_curve": u(-0.12, 0.2),
        "lip": np.clip(skin * np.array([u(0.7, 0.95), u(0.45, 0.7), u(0.45, 0.7)]), 0, 255),
        # Hair: volume around the face, a curved hairline with a parting, and a side length.
        "hair": hair,
        "hair_volume_a": 0.0 if bald else u(2, 14),
        "hair_volume_b": 0.0 if bald else u(3, 16),
        "hairline": u(2, 8) if bald else u(10, 28),
        "hairline_curve": u(-4, 14),
        "hair_part": u(-14, 14),
        "hair_side": 0.0 if bald else u(40, 118),
        # Beard and glasses belong to the identity (nobody shaves or takes glasses off here).
        "beard": u(0.4, 0.95) if rng.uniform() < 0.22 else 0.0,
        "beard_top": u(78, 96),
        "moustache": u(0.4, 0.95) if rng.uniform() < 0.25 else 0.0,
        "glasses": 1.0 if rng.uniform() < 0.15 else 0.0,
        "glasses_r": u(8, 12),
        "glasses_frame": _palette(rng, _FRAME_COLOURS, 10),
    }
    return Identity(name=name, params={key: np.asarray(value, dtype=_F32) for key, value in params.items()})


def sample_variation(rng: np.random.Generator) -> dict[str, Array]:
    """Pose, expression, lighting, background and camera parameters of one image."""
    u = rng.uniform
    values: dict[str, Any] = {
        "angle": rng.normal(0, 0.09),
        "scale": np.exp(rng.normal(0, 0.05)),
        "shift_x": rng.normal(0, 1.8),
        "shift_y": rng.normal(0, 1.8),
        "yaw": np.clip(rng.normal(0, 0.45), -1, 1),
        "eye_open": u(0.55, 1.15),
        "gaze_x": rng.normal(0, 0.6),
        "gaze_y": rng.normal(0, 0.4),
        "smile": rng.normal(0, 0.05),
        "mouth_open": max(0.0, rng.normal(0, 1.0)),
        "brow_raise": rng.normal(0, 0.8),
        "light_x": u(-0.8, 0.8),
        "light_y": u(-0.7, 0.5),
        "ambient": u(0.35, 0.65),
        "gain": np.exp(rng.normal(0, 0.16)),
        "contrast": u(0.7, 1.15),
        "cast": np.exp(rng.normal(0, 0.05, size=3)),
        "background": rng.uniform(20, 235, size=3),
        "background_grad": rng.normal(0, 0.4, size=2),
        "blob_u": rng.uniform(0, 112, size=2),
        "blob_v": rng.uniform(0, 112, size=2),
        "blob_r": rng.uniform(8, 30, size=2),
        "blob_colour_0": rng.uniform(0, 255, size=3),
        "blob_colour_1": rng.uniform(0, 255, size=3),
        "softness": u(0.7, 1.6),
        "blur": u(0, 1) ** 2,
        "noise": u(1.5, 8),
    }
    return {key: np.asarray(value, dtype=_F32) for key, value in values.items()}


def _stack(items: Sequence[dict[str, Array]]) -> dict[str, Array]:
    """Stack per-image dicts: scalars to (B, 1, 1), vectors to (B, 1, 1, n), colours to (B, 3, 1, 1)."""
    stacked = {}
    for key in items[0]:
        values = np.stack([item[key] for item in items])
        if key in _COLOUR_KEYS:
            stacked[key] = values.reshape(values.shape[0], 3, 1, 1)
        else:
            stacked[key] = values.reshape(values.shape[0], 1, 1, *values.shape[1:])
    return stacked


# ----------------------------------------------------------------------------------------------
# Rendering

Window = tuple[slice, slice]


def _ramp(signed_distance: Array, softness: Any) -> Array:
    """Anti-aliased coverage: 1 inside (positive distance), 0 outside, linear over ``softness``."""
    coverage = np.divide(signed_distance, softness, dtype=_F32)
    coverage += _F32(0.5)
    return np.clip(coverage, _F32(0.0), _F32(1.0), out=coverage)


def _flat(value: Any, batch: int) -> Array:
    return np.broadcast_to(np.asarray(value, dtype=_F32).reshape(-1), (batch,))


class _Canvas:
    """A batch of images in channel-first float32, with each pixel's face coordinates (u, v)."""

    def __init__(self, variation: dict[str, Array], batch: int, size: int) -> None:
        self.batch, self.size = batch, size
        self.pixels_per_unit = size / CANONICAL_SIZE
        axis = (np.arange(size, dtype=_F32) + _F32(0.5)) / _F32(self.pixels_per_unit)
        self.x, self.y = axis[None, None, :], axis[None, :, None]
        self.cos, self.sin = np.cos(variation["angle"]), np.sin(variation["angle"])
        self.scale, self.shift_x, self.shift_y = (
            variation["scale"],
            variation["shift_x"],
            variation["shift_y"],
        )
        dx = (self.x - _CENTRE_U - self.shift_x) / self.scale
        dy = (self.y - _CENTRE_V - self.shift_y) / self.scale
        self.u = _CENTRE_U + dx * self.cos + dy * self.sin
        self.v = _CENTRE_V - dx * self.sin + dy * self.cos
        self.image = np.empty((batch, 3, size, size), dtype=_F32)
        #: Light falling on each pixel, multiplied in at the end so every part is lit alike.
        self.shade = np.ones((batch, size, size), dtype=_F32)
        self.full: Window = (slice(0, size), slice(0, size))

    def window(self, u_low: Any, u_high: Any, v_low: Any, v_high: Any) -> Window:
        """Pixel rows and columns that face-coordinate box can reach in any image of the batch."""
        corners_u = np.stack([_flat(u_low, self.batch), _flat(u_high, self.batch)] * 2)
        low_v, high_v = _flat(v_low, self.batch), _flat(v_high, self.batch)
        corners_v = np.stack([low_v, low_v, high_v, high_v])
        du, dv = corners_u - _CENTRE_U, corners_v - _CENTRE_V
        cos, sin, scale = self.cos.reshape(-1), self.sin.reshape(-1), self.scale.reshape(-1)
        x = _CENTRE_U + self.shift_x.reshape(-1) + scale * (du * cos - dv * sin)
        y = _CENTRE_V + self.shift_y.reshape(-1) + scale * (du * sin + dv * cos)
        return self._span(y), self._span(x)

    def _span(self, coordinate: Array) -> slice:
        low = int(np.floor(coordinate.min() * self.pixels_per_unit)) - 1
        high = int(np.ceil(coordinate.max() * self.pixels_per_unit)) + 2
        low = min(max(low, 0), self.size)
        return slice(low, min(max(high, low), self.size))

    def coords(self, window: Window) -> tuple[Array, Array]:
        rows, cols = window
        return self.u[:, rows, cols], self.v[:, rows, cols]

    def paint(self, window: Window, alpha: Array, colour: Array) -> None:
        """Alpha-blend ``colour`` ((B|1, 3, 1, 1) or per pixel) into the window, in place."""
        rows, cols = window
        region = self.image[:, :, rows, cols]
        change = np.subtract(colour, region, dtype=_F32)
        change *= alpha[:, None]
        region += change

    def ellipse(
        self, cu: Any, cv: Any, a: Any, b: Any, soft: Any, *, angle: Any = None
    ) -> tuple[Window, Array]:
        """Coverage of an ellipse centred at (cu, cv) with half-axes a, b, inside its window."""
        reach = np.maximum(a, b) * (1 + soft / np.minimum(a, b)) + 1
        window = self.window(cu - reach, cu + reach, cv - reach, cv + reach)
        u, v = self.coords(window)
        du, dv = u - cu, v - cv
        if angle is not None:
            cos, sin = np.cos(angle), np.sin(angle)
            du, dv = du * cos + dv * sin, dv * cos - du * sin
        radius = np.sqrt((du / a) ** 2 + (dv / b) ** 2)
        return window, _ramp((1.0 - radius) * np.minimum(a, b), soft)


def render_batch(
    identities: Sequence[Identity], rngs: Sequence[np.random.Generator], *, size: int = CANONICAL_SIZE
) -> Array:
    """Render ``identities[i]`` under a variation drawn from ``rngs[i]``: (B, size, size, 3) uint8."""
    if len(identities) != len(rngs):
        raise ValueError(f"{len(identities)} identities but {len(rngs)} generators")
    if not identities:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    variations = [sample_variation(rng) for rng in rngs]
    # Uniform sensor noise with unit variance: as good as Gaussian here, and four times cheaper to draw.
    noise = np.stack([rng.random((3, size, size), dtype=_F32) for rng in rngs])
    noise -= 0.5
    noise *= _F32(np.sqrt(12.0))
    params, variation = _stack([i.params for i in identities]), _stack(variations)
    canvas = _Canvas(variation, len(identities), size)
    _draw(canvas, params, variation, noise)
    return _finish(canvas, variation, noise)


def _draw(canvas: _Canvas, p: dict[str, Array], w: dict[str, Array], noise: Array) -> None:
    u, v, soft, full = canvas.u, canvas.v, w["softness"], canvas.full
    yaw = w["yaw"]
    # Yaw moves a part sideways in proportion to its depth (nose most, outline least).
    depth_shift = yaw * _F32(5.0)

    grad = w["background_grad"]
    ramp = 1 + grad[..., 0] * (canvas.x - 56) / 112 + grad[..., 1] * (canvas.y - 56) / 112
    canvas.image[:] = w["background"] * ramp[:, None]
    for blob in range(2):
        radius = w["blob_r"][..., blob]
        window, alpha = canvas.ellipse(
            w["blob_u"][..., blob], w["blob_v"][..., blob], radius, radius, soft * 4
        )
        canvas.paint(window, alpha * 0.6, w[f"blob_colour_{blob}"])

    # Face outline: a superellipse, narrower towards the chin; the far cheek shrinks with yaw.
    face_u = _CENTRE_U + depth_shift * 0.4
    du, dv = u - face_u, v - p["face_cy"]
    lower = dv > 0
    half_width = p["face_a"] * (1 - np.sign(du) * yaw * 0.12)
    half_width *= 1 - p["jaw_taper"] * (np.maximum(dv, 0) / p["face_b_bottom"]) ** 2
    half_height = p["face_b_top"] + lower * (p["face_b_bottom"] - p["face_b_top"])
    power = p["face_power"]
    radius = ((np.abs(du) / half_width) ** power + (np.abs(dv) / half_height) ** power) ** (1 / power)
    face = _ramp((1 - radius) * 30, soft)

    # Hair volume behind the head.
    hair_a, hair_b = p["face_a"] + p["hair_volume_a"], p["face_b_top"] + p["hair_volume_b"]
    hair_radius = np.sqrt((du / hair_a) ** 2 + (np.minimum(dv, 0) / hair_b) ** 2)
    hair_back = _ramp((1 - hair_radius) * 30, soft) * _ramp(p["hair_side"] - v, soft * 2)
    hair_back *= p["hair_volume_a"] > 0
    canvas.paint(full, hair_back, p["hair"])

    # Skin: tone, low-frequency texture, blush.
    canvas.paint(full, face, p["skin"])
    texture = np.zeros_like(u)
    for k in range(3):
        angle = p["texture_angle"][..., k]
        phase = (u * np.cos(angle) + v * np.sin(angle)) * p["texture_freq"][..., k] + p["texture_phase"][
            ..., k
        ]
        texture += p["texture_amp"][..., k] * np.sin(phase)
    canvas.image += (texture * face)[:, None]
    eye_y, spacing = p["eye_y"], p["eye_half_spacing"]
    for side in (-1, 1):
        cheek_u = face_u + side * (spacing + 4) + depth_shift * 0.5
        window, alpha = canvas.ellipse(cheek_u, eye_y + 18, _F32(8), _F32(6), soft * 6)
        canvas.paint(window, alpha * p["cheek_blush"], _BLUSH)
    for k in range(3):
        mole_r = p["mole_r"][..., k] + _F32(1e-3)
        window, alpha = canvas.ellipse(
            p["mole_u"][..., k] + depth_shift * 0.5, p["mole_v"][..., k], mole_r, mole_r, soft
        )
        canvas.paint(window, alpha * face[:, window[0], window[1]] * (mole_r > 0.01), p["skin"] * 0.45)

    # Shading of a rounded face under a directional light (applied at the end, to every part).
    normal_x = np.clip(du / half_width, -1, 1)
    normal_y = np.clip(dv / half_height, -1, 1)
    normal_z = np.sqrt(np.clip(1 - normal_x**2 - normal_y**2, 0, 1))
    light_x, light_y = w["light_x"], w["light_y"]
    lambert = np.clip(
        (normal_x * light_x + normal_y * light_y + normal_z) / np.sqrt(light_x**2 + light_y**2 + 1), 0, 1
    )
    shade = w["ambient"] + (1 - w["ambient"]) * lambert
    canvas.shade = face * shade + (1 - face) * (0.75 + 0.25 * shade)

    _draw_nose(canvas, p, face_u + depth_shift, np.sign(light_x + 1e-3), soft)
    _draw_mouth(canvas, p, w, face_u + depth_shift * 0.7, noise, face)
    for side in (-1, 1):
        eye_u = face_u + side * spacing * (1 - side * yaw * 0.08) + depth_shift * 0.5
        _draw_eye(canvas, p, w, side, eye_u, soft)
    _draw_hair_front(canvas, p, face_u, np.maximum(face, hair_back), soft)
    if np.any(p["glasses"] > 0):
        _draw_glasses(canvas, p, face_u + depth_shift * 0.5, soft)


def _draw_nose(canvas: _Canvas, p: dict[str, Array], nose_u: Any, light_side: Any, soft: Any) -> None:
    """A bridge shadow on the side away from the light, two nostrils, a highlight on the tip."""
    eye_y, nose_y = p["eye_y"], p["nose_y"]
    bridge_u, bridge_v = nose_u - light_side * 3.0, (eye_y + nose_y) / 2 + 2
    window, alpha = canvas.ellipse(bridge_u, bridge_v, _F32(1.8), (nose_y - eye_y) / 2, soft * 2)
    canvas.paint(window, alpha * p["nose_bridge"], p["skin"] * 0.55)
    for side in (-1, 1):
        nostril_u = nose_u + side * p["nose_w"] * 0.55
        window, alpha = canvas.ellipse(
            nostril_u, nose_y + 1.5, p["nostril_r"] * 1.3, p["nostril_r"] * 0.8, soft
        )
        canvas.paint(window, alpha * 0.85, p["skin"] * 0.3)
    window, alpha = canvas.ellipse(nose_u, nose_y - 1.5, p["nose_w"] * 0.5, _F32(2.5), soft * 3)
    canvas.paint(window, alpha * 0.35, np.minimum(p["skin"] * 1.25, 255))


def _draw_mouth(
    canvas: _Canvas, p: dict[str, Array], w: dict[str, Array], mouth_u: Any, noise: Array, face: Array
) -> None:
    """Lips around a curved centre line, a dark gap when open, moustache above, beard below."""
    soft, width, curve = w["softness"], p["mouth_w"], p["mouth_curve"] + w["smile"]
    reach = np.abs(curve) * width + w["mouth_open"] + 8
    window = canvas.window(
        mouth_u - width - 3, mouth_u + width + 3, p["mouth_y"] - reach, p["mouth_y"] + reach
    )
    u, v = canvas.coords(window)
    along = (u - mouth_u) / width
    inside = np.clip(1 - along**2, 0, 1)
    centre_line = p["mouth_y"] - curve * width * (along**2 - 0.3)
    gap = w["mouth_open"] * inside
    upper = (centre_line - gap / 2 - p["lip_upper"] * inside, centre_line - gap / 2)
    lower = (centre_line + gap / 2, centre_line + gap / 2 + p["lip_lower"] * inside)
    horizontal = _ramp((1 - np.abs(along)) * width, soft)
    for top, bottom in (upper, lower):
        canvas.paint(window, horizontal * _ramp(np.minimum(v - top, bottom - v), soft), p["lip"])
    opening = horizontal * _ramp(np.minimum(v - upper[1], lower[0] - v), soft) * (gap > 0.2)
    canvas.paint(window, opening, _MOUTH_INSIDE)
    rows, cols = window
    grain = 0.75 + 0.25 * np.clip(noise[:, 0], -1, 1)
    if np.any(p["moustache"] > 0):
        moustache = horizontal * _ramp(np.minimum(v - (upper[0] - 3.5), upper[0] - v + 0.5), soft)
        canvas.paint(window, moustache * p["moustache"] * grain[:, rows, cols], p["hair"])
    if np.any(p["beard"] > 0):
        # Below beard_top, down to the chin: the face mask bounds it.
        window = canvas.window(
            _F32(0), _F32(CANONICAL_SIZE), p["beard_top"] - 4, p["face_cy"] + p["face_b_bottom"] + 4
        )
        rows, cols = window
        beard = face[:, rows, cols] * _ramp(canvas.v[:, rows, cols] - p["beard_top"], soft * 3) * p["beard"]
        canvas.paint(window, beard * grain[:, rows, cols], p["hair"])


def _draw_eye(
    canvas: _Canvas, p: dict[str, Array], w: dict[str, Array], side: int, eye_u: Any, soft: Any
) -> None:
    """Sclera, iris and pupil clipped to the lids, a lid shadow, and the brow."""
    eye_y, tilt, eye_h = p["eye_y"], side * p["eye_tilt"], p["eye_h"] * w["eye_open"]
    window, opening = canvas.ellipse(eye_u, eye_y, p["eye_w"] + 1, eye_h + 1, soft, angle=tilt)
    u, v = canvas.coords(window)
    du, dv = u - eye_u, v - eye_y
    cos, sin = np.cos(tilt), np.sin(tilt)
    along, across = du * cos + dv * sin, dv * cos - du * sin
    radius = np.sqrt((along / p["eye_w"]) ** 2 + (across / eye_h) ** 2)
    lids = opening
    opening = _ramp((1 - radius) * np.minimum(p["eye_w"], eye_h), soft)
    canvas.paint(window, opening, _SCLERA)
    iris_u, iris_v = eye_u + w["gaze_x"], eye_y + w["gaze_y"]
    iris_distance = np.sqrt((u - iris_u) ** 2 + (v - iris_v) ** 2)
    canvas.paint(window, _ramp(p["iris_r"] - iris_distance, soft) * opening, p["iris"])
    canvas.paint(window, _ramp(p["iris_r"] * 0.4 - iris_distance, soft) * opening, _PUPIL)
    canvas.paint(window, np.clip(lids - opening, 0, 1) * 0.5, p["skin"] * 0.5)

    brow_u = eye_u + side * 1.0
    brow_v = eye_y - p["brow_gap"] - eye_h - w["brow_raise"]
    reach = p["brow_len"] + p["brow_thick"] + 4
    window = canvas.window(brow_u - reach, brow_u + reach, brow_v - reach, brow_v + reach)
    u, v = canvas.coords(window)
    bu, bv = (u - brow_u) * side, v - brow_v
    cos, sin = np.cos(p["brow_tilt"]), np.sin(p["brow_tilt"])
    along = bu * cos - bv * sin
    across = bv * cos + bu * sin + p["brow_arch"] * (1 - (along / p["brow_len"]) ** 2)
    brow = _ramp(p["brow_len"] - np.abs(along), soft) * _ramp(p["brow_thick"] / 2 - np.abs(across), soft)
    canvas.paint(window, brow * 0.9, p["brow_colour"])


def _draw_hair_front(canvas: _Canvas, p: dict[str, Array], face_u: Any, head: Array, soft: Any) -> None:
    """Hair above the hairline, which curves down towards the sides and bends with the parting."""
    lowest = p["hairline"] + np.maximum(p["hairline_curve"], 0) * 2.5 + 4
    window = canvas.window(_F32(0), _F32(CANONICAL_SIZE), _F32(-20), lowest)
    rows, cols = window
    u, v = canvas.coords(window)
    hairline = p["hairline"] + p["hairline_curve"] * ((u - face_u - p["hair_part"]) / p["face_a"]) ** 2
    canvas.paint(window, _ramp(hairline - v, soft * 2) * head[:, rows, cols], p["hair"])


def _draw_glasses(canvas: _Canvas, p: dict[str, Array], centre_u: Any, soft: Any) -> None:
    """Two rings around the eyes and a bridge between them."""
    spacing, eye_y, ring_r = p["eye_half_spacing"], p["eye_y"], p["glasses_r"]
    reach_u, reach_v = spacing + ring_r + 3, ring_r + 3
    window = canvas.window(centre_u - reach_u, centre_u + reach_u, eye_y - reach_v, eye_y + reach_v)
    u, v = canvas.coords(window)
    frame = _ramp(0.8 - np.abs(v - eye_y + 2), soft) * _ramp(spacing - ring_r - np.abs(u - centre_u), soft)
    for side in (-1, 1):
        ring = np.sqrt((u - centre_u - side * spacing) ** 2 + ((v - eye_y) * 1.25) ** 2)
        frame = np.maximum(frame, _ramp(0.9 - np.abs(ring - ring_r), soft))
    canvas.paint(window, frame * p["glasses"], p["glasses_frame"])


def _finish(canvas: _Canvas, w: dict[str, Array], noise: Array) -> Array:
    """Light, camera response, blur and sensor noise; back to (B, H, W, 3) uint8."""
    image = canvas.image
    image *= canvas.shade[:, None]
    image -= 128
    image *= w["contrast"][:, None]
    image += 128
    image *= w["gain"][:, None] * w["cast"].reshape(-1, 3, 1, 1)
    image += w["blur"][:, None] * (_binomial_blur(image) - image)
    image += noise * w["noise"][:, None]
    image += 0.5
    np.clip(image, 0, 255, out=image)
    return np.ascontiguousarray(image.astype(np.uint8).transpose(0, 2, 3, 1))


def _binomial_blur(images: Array) -> Array:
    """A 3x3 binomial blur over (B, C, H, W), edges replicated."""
    padded = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    rows = padded[:, :, :-2] * 0.25 + padded[:, :, 1:-1] * 0.5 + padded[:, :, 2:] * 0.25
    blurred: Array = rows[..., :-2] * 0.25 + rows[..., 1:-1] * 0.5 + rows[..., 2:] * 0.25
    return blurred
