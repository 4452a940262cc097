"""Scores of an edit: temporal consistency along the source's optical flow."""

from videdit.metrics.temporal import (TemporalMeter, evaluate_clips, flicker, temporal_report, warp_error,
                                      warp_errors)

__all__ = ["TemporalMeter", "evaluate_clips", "flicker", "temporal_report", "warp_error", "warp_errors"]
