"""Behavioural flags for operators, computed from the stream of decided attempts: bursts at
machine speed, inhumanly regular intervals, score growth far above the population's, many
accounts from one address. A flag carries its evidence and never changes a score.

`detector.FlagDetector` is the pure core; `simulation` drives it with scripted players and
cheaters. What each flag looks at and why its defaults: docs/anticheat.md.
"""
