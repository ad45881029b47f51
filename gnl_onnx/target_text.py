"""--target TEXT: what the CLI's flag names, read into a Target (targets.py, box_targets.py) or a class."""
from __future__ import annotations

from .box_targets import DetectionBox
from .errors import UsageError
from .targets import DBNET_THRESHOLD, DenseRegion, OutputSlice, SegmentRegion, Target


TARGET_HELP = ("what is explained: CLASS or class[:CLASS] (a class score; default the top-1); segment[:CLASS]"
               "[@REGION] (a segmenter's class logits summed over the class's predicted mask, or over REGION); "
               "dense[:CHANNEL][@REGION] (a probability map, e.g. DBNet's text map, summed over its pixels above "
               f"{DBNET_THRESHOLD}, or over REGION); output:NAME[INDEX] (that output, indexed after the batch "
               "dim as numpy, e.g. output:out[3,10:20,:], summed). REGION: a mask image or .npy (nonzero inside, "
               "prepared like the images), a box x0,y0,x1,y1 in the map's pixels, or a threshold T (values above "
               "it); several @REGION parts intersect; box[:K][@T] (a detector's boxes, NMS done here on its raw head: "
               "the top box, the top K, or all scoring above T; each kept box explained by its class score)")


def parse_target(text: str, mask_reader=None) -> tuple[Target | None, int | None]:
    """--target TEXT -> (the Target, or None for the settings' class score; the class or channel
    given, or None for the top-1). mask_reader(path) -> an [H, W] array reads a mask file."""
    text = text.strip()
    if _is_int(text):
        return None, int(text)
    cut = min((i for i in (text.find(":"), text.find("@")) if i >= 0), default=len(text))
    kind, rest = text[:cut], text[cut + 1:] if text[cut:cut + 1] == ":" else text[cut:]
    if kind == "class":
        if rest and not _is_int(rest):
            raise UsageError(f"--target {text}: the class is an integer (class:3)")
        return None, int(rest) if rest else None
    if kind == "output":
        return _parse_output_slice(text, rest), None
    if kind == "box":
        return parse_box_target(text), None
    if kind not in ("segment", "dense"):
        raise UsageError(f"--target {text}: unknown target; use CLASS, class[:CLASS], segment[:CLASS][@REGION], "
                         "dense[:CHANNEL][@REGION] or output:NAME[INDEX]")
    chosen, *regions = rest.split("@")
    if chosen and not _is_int(chosen):
        raise UsageError(f"--target {text}: the class of {kind}:CLASS is an integer")
    region = {}
    for part in regions:
        numbers = part.split(",")
        if len(numbers) == 4 and all(_is_number(v) for v in numbers):
            region["box"] = tuple(float(v) for v in numbers)
        elif _is_number(part):
            region["threshold"] = float(part)
        elif part:
            if mask_reader is None:
                raise UsageError(f"--target {text}: a mask file needs a way to read it here")
            region["mask"] = mask_reader(part)
        else:
            raise UsageError(f"--target {text}: an empty @REGION; give a mask file, a box x0,y0,x1,y1 or a threshold")
    cls = SegmentRegion if kind == "segment" else DenseRegion
    return cls(**region), int(chosen) if chosen else None


def _parse_output_slice(text: str, rest: str) -> OutputSlice:
    name, bracket, index = rest.partition("[")
    if not name or (bracket and not index.endswith("]")):
        raise UsageError(f"--target {text}: write output:NAME or output:NAME[INDEX], e.g. output:out[0,5:9]")
    entries = []
    for item in index[:-1].split(",") if bracket and index[:-1].strip() else []:
        item = item.strip()
        if _is_int(item):
            entries.append(int(item))
        elif ":" in item and item.count(":") <= 2 and all(v.strip() == "" or _is_int(v) for v in item.split(":")):
            entries.append(slice(*(int(v) if v.strip() else None for v in item.split(":"))))
        else:
            raise UsageError(f"--target {text}: '{item}' is not an index (an integer or start:stop[:step])")
    return OutputSlice(output_name=name, index=tuple(entries))


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def parse_box_target(text: str) -> DetectionBox:
    """--target box, box:K, box@T or box:K@T (the top box, the top K, all above T, at most K)."""
    if not text.startswith("box"):
        _bad_box(text)
    top, at, threshold = text[3:].partition("@")
    if (top and not top.startswith(":")) or top == ":" or (at and not threshold):
        _bad_box(text)
    try:
        return DetectionBox(top=int(top[1:]) if top else None, threshold=float(threshold) if at else None)
    except ValueError:
        _bad_box(text)


def _bad_box(text):
    raise UsageError(f"--target {text}: write box (the top box), box:K (the top K), box@T (all scoring above T) "
                     "or box:K@T")


def class_only(text: str | None) -> int | None:
    """--target for the commands that explain class scores only (evaluate, check, audit): the class,
    or None for the top-1; another kind of target is refused in one line."""
    if text is None:
        return None
    target, chosen = parse_target(text)
    if target is not None:
        raise UsageError(f"--target {text}: this command explains class scores; region and output targets work "
                         "with explain and convert")
    return chosen
