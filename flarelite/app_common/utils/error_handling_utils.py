"""The return-code policy of the server workflows (``ignore_result_error``: True, False or None = dynamic)."""

from __future__ import annotations


def should_ignore_result_error(
    ignore_result_error: bool | None,
    client_name: str,
    failed_clients: set[str],
    num_targets: int,
    min_responses: int,
) -> bool:
    """Return True to ignore a failed result of ``client_name``, False to end the run.

    ``True`` always ignores and ``False`` never does. ``None`` adds the client to ``failed_clients`` and ignores
    the failure while the clients that have not failed can still give ``min_responses`` results
    (``num_targets - len(failed_clients) >= min_responses``; ``min_responses <= 0`` means all targets).
    """
    if ignore_result_error is True:
        return True
    if ignore_result_error is False:
        return False
    failed_clients.add(client_name)
    needed = min_responses if min_responses > 0 else num_targets
    return num_targets - len(failed_clients) >= needed


def get_error_handling_message(
    ignore_result_error: bool | None,
    client_name: str,
    error_code: str,
    current_round: int | None,
    controller_name: str,
    failed_clients: set[str],
    num_targets: int,
    min_responses: int,
) -> str:
    """Return the log line for a failed result, for the decision ``should_ignore_result_error`` made."""
    needed = min_responses if min_responses > 0 else num_targets
    remaining = num_targets - len(failed_clients)
    if ignore_result_error is True:
        return f"Ignore the result from {client_name} at round {current_round}. Result error code: {error_code}"
    if ignore_result_error is False:
        return (
            f"Result from {client_name} is bad, error code: {error_code}. "
            f"{controller_name} exiting at round {current_round}."
        )
    if remaining >= needed:
        return (
            f"Ignore the result from {client_name} at round {current_round}. Result error code: {error_code}. "
            f"Remaining good clients ({remaining}) >= min_responses ({needed})."
        )
    return (
        f"Result from {client_name} is bad, error code: {error_code}. Cannot reach min_responses: "
        f"remaining good clients ({remaining}) < min_responses ({needed}). "
        f"{controller_name} exiting at round {current_round}."
    )
