"""The backends of ClientAPIExecutor: in-process (a script thread) and external-process (a script process)."""
