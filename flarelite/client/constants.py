"""Names the Client API and its executor share: config file and env variable names, system attributes."""

from __future__ import annotations

CLIENT_API_CONFIG = "client_api_config.json"
SYS_ATTRS = ("job_id", "site_name")

# flarelite: the bootstrap of an external training script (NVFlare names it NVFLARE_CLIENT_API_BOOTSTRAP)
BOOTSTRAP_ENV = "FLARELITE_CLIENT_API_BOOTSTRAP"
CLIENT_API_TYPE_ENV = "CLIENT_API_TYPE"
RANK_ENV = "RANK"
