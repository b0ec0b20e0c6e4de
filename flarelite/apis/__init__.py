"""The user-facing contracts; module paths mirror NVFlare's so imports port by changing the root only."""
