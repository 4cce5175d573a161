"""The detector: the anomaly score defined once (see ``vigil.detector.core``)."""

from vigil.detector.core import Detector, ItemScore, PreparedScores, StreamState
from vigil.detector.record import DETECTOR_FILE, DetectorError, DetectorRecord

__all__ = [
    "DETECTOR_FILE",
    "Detector",
    "DetectorError",
    "DetectorRecord",
    "ItemScore",
    "PreparedScores",
    "StreamState",
]
