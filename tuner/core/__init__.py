"""The bottom layer: value objects, device-key rules, byte sizes, exceptions and the codec.

Nothing here imports torch, SQLAlchemy or any other package of the project, so every layer above
(profiler, storage, reports, plan, workflows, cli) may import it.
"""
