"""Reports are one room: every picture and page of gnl-onnx is rendered here, and the commands
hand over results, never HTML.

pictures: heatmaps, overlays on the photo, the input image, atomic writes;
pages: the page of overlays (explain, the demo) and the evaluation report (evaluate, audit);
results: the report's images (OUT/overlays/) and the methods' agreement per image.
"""
from .pages import ImageResult, Panel, Row, evaluation_page, html_page, metric_names, summary_columns  # noqa: F401
from .pictures import (ABS_CMAP, OUTLIERS, PERCENTILE, SIGNED_CMAP, PathLike, atomic_write, colorize,  # noqa: F401
                       gaussian_smooth, heatmap_png, image_png, mass_clip, overlay, overlay_png, png_bytes,
                       reduce_channels, roughness, smoothing_sigma)
from .results import OVERLAYS, REPORT, REPORT_IMAGES, ReportImages, agreement, overlay_paths

__all__ = ["ABS_CMAP", "ImageResult", "OUTLIERS", "OVERLAYS", "PERCENTILE", "Panel", "REPORT", "REPORT_IMAGES",
           "ReportImages", "Row", "SIGNED_CMAP", "agreement", "atomic_write", "colorize", "evaluation_page",
           "gaussian_smooth", "heatmap_png", "html_page", "image_png", "mass_clip", "metric_names", "overlay",
           "overlay_png", "overlay_paths", "png_bytes", "reduce_channels", "roughness", "smoothing_sigma"]
