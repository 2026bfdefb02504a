"""Streaming: Kafka -> bronze -> silver -> segment triggers (`seglake run stream`, issue #17).

Built so far: :mod:`seglake.stages.stream.produce` (`seglake stream produce`), which replays
raw landing files into a Kafka topic. The streaming job itself (``run``) is not built yet, so
`seglake run stream` still says it is not available (exit 3).
"""
