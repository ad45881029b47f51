"""What a check says: its measures against thresholds, pass or fail, and the report (text, JSON,
JUnit XML) a CI pipeline reads."""
from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .settings import Thresholds


# -- results -------------------------------------------------------------------------------------
@dataclass
class Measure:
    name: str
    value: float | None
    op: str  # "<=" or ">=": how value must compare to limit
    limit: float

    @property
    def passed(self) -> bool:
        if self.value is None or math.isnan(self.value):
            return False
        return bool(self.value <= self.limit if self.op == "<=" else self.value >= self.limit)

    def text(self) -> str:
        shown = "n/a" if self.value is None else f"{self.value:.4g}"
        verdict = self.op if self.passed else {"<=": ">", ">=": "<"}[self.op]
        return f"{self.name} {shown} {verdict} {self.limit:.4g}"


@dataclass
class CheckResult:
    name: str
    status: str  # "pass", "fail" or "skip"
    summary: str  # one line
    measures: list[Measure] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "summary": self.summary,
                "measures": [{**asdict(m), "value": _finite(m.value), "passed": m.passed} for m in self.measures],
                "details": _jsonable(self.details), "seconds": round(self.seconds, 3)}


def _judged(name: str, measures: list[Measure], note: str, details: dict) -> CheckResult:
    status = "pass" if all(m.passed for m in measures) else "fail"
    return CheckResult(name, status, "; ".join([m.text() for m in measures] + ([note] if note else [])),
                       measures, details)


def _finite(v):
    return float(v) if v is not None and math.isfinite(v) else None


def _jsonable(value):
    """Plain JSON data: numpy scalars and arrays unwrapped, NaN and infinities as null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _finite(float(value))
    return value


@dataclass
class CheckReport:
    model: str
    model_sha256: str
    results: list[CheckResult]
    thresholds: Thresholds
    settings: dict
    config: str | None = None

    @property
    def passed(self) -> bool:
        return all(r.status != "fail" for r in self.results)

    def counts(self) -> dict:
        return {s: sum(r.status == s for r in self.results) for s in ("pass", "fail", "skip")}

    def as_dict(self) -> dict:
        return {"model": self.model, "model_sha256": self.model_sha256, "passed": self.passed,
                "counts": self.counts(), "checks": [r.as_dict() for r in self.results],
                "thresholds": asdict(self.thresholds), "config": self.config, "settings": self.settings}

    def text(self) -> str:
        lines = [f"gnl-onnx check {self.model} (sha256 {self.model_sha256[:12]})"]
        lines += [f"{r.status.upper():<5}{r.name:<15}{r.summary}" for r in self.results]
        c = self.counts()
        lines.append(f"{c['pass']} passed, {c['fail']} failed, {c['skip']} skipped")
        return "\n".join(lines)

    def junit_xml(self) -> str:
        """One <testsuite name="gnl-onnx check">, one <testcase> per check: <failure> for failed
        checks, <skipped> for those that did not apply."""
        c = self.counts()
        total = f"{sum(r.seconds for r in self.results):.3f}"
        suites = ET.Element("testsuites", name="gnl-onnx check", tests=str(len(self.results)),
                            failures=str(c["fail"]), errors="0", skipped=str(c["skip"]), time=total)
        suite = ET.SubElement(suites, "testsuite", name="gnl-onnx check", tests=str(len(self.results)),
                              failures=str(c["fail"]), errors="0", skipped=str(c["skip"]), time=total)
        properties = ET.SubElement(suite, "properties")
        for name, value in (("model", self.model), ("model_sha256", self.model_sha256),
                            ("config", self.config or "")):
            ET.SubElement(properties, "property", name=name, value=value)
        stem = Path(self.model).stem
        for r in self.results:
            case = ET.SubElement(suite, "testcase", name=r.name, classname=f"gnl-onnx check.{stem}",
                                 time=f"{r.seconds:.3f}")
            if r.status == "fail":
                ET.SubElement(case, "failure", message=r.summary, type="CheckFailed").text = \
                    json.dumps(r.as_dict(), indent=2)
            elif r.status == "skip":
                ET.SubElement(case, "skipped", message=r.summary)
            else:
                ET.SubElement(case, "system-out").text = r.summary
        ET.indent(suites)
        return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _plain(value):
    """JSON-comparable: tuples become lists (a reference's header goes through JSON)."""
    return json.loads(json.dumps(value))


def _show(value) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)
