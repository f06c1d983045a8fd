"""Text drawn with PIL's built-in font (no font files needed): measuring and placing labels."""

from __future__ import annotations

from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from polyviz.errors import InputError

__all__ = ["font", "text_size", "draw_text"]


@lru_cache(maxsize=8)
def font(size: int = 12) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font at ``size`` pixels (the fixed bitmap font on Pillow without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # pragma: no cover - Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def _check_text(text: object, name: str) -> str:
    if not isinstance(text, str):
        raise InputError(f"{name}: expected a string, got {type(text).__name__}")
    return text


def text_size(text: str, size: int = 12) -> tuple[int, int]:
    """(width, height) in pixels of ``text`` (may hold newlines) drawn at ``size``."""
    if not text:
        return 0, 0
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    right = draw.multiline_textbbox((0, 0), text, font=font(size), spacing=2)[2]
    # height from a line of capitals and descenders, so that titles share a baseline
    probe = "\n".join("Ag" for _ in text.split("\n"))
    bottom = draw.multiline_textbbox((0, 0), probe, font=font(size), spacing=2)[3]
    return int(right), int(bottom)


def draw_text(canvas: Image.Image, xy: tuple[int, int], text: str, size: int = 12, colour=(0, 0, 0), align="left") -> None:
    """Draw ``text`` with its layout box's top-left corner at ``xy``."""
    if text:
        ImageDraw.Draw(canvas).multiline_text(xy, text, fill=tuple(colour), font=font(size), spacing=2, align=align)
