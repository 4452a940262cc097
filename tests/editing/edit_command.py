"""Running ``videdit edit`` in process on tiny-random, for the blending and score editors' CLI tests."""

from pathlib import Path

from videdit.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
BASE = ["--model", "tiny-random", "--steps", "2", "--no-cache", "-q", "--size", "64", "--max-frames", "2"]


def run(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def parse(*argv):
    return build_parser().parse_args(["edit", "in.mp4", "-t", "x", "-o", "out.mp4", *map(str, argv)])
