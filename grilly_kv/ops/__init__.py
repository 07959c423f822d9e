"""One Python function per shader: validates input, picks the device, dispatches.

Each op's NumPy twin lives under ``grilly_kv.reference`` with the same module name.
"""
