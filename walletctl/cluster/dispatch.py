"""The one hook by which a core function behaves differently on a proxy.

``@on_proxy("name")`` on a core function: called with a connection to an ordinary walletctl
database, it runs as written; called with a connection to a PL/Proxy proxy, the function
of that name in walletctl.cluster.reads runs instead, with the proxy's topology. A core
function reads the ledger's tables, which a proxy does not have; the reads module says,
for each, on which partitions it runs and how their results combine.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib import import_module
from typing import Any, TypeVar, cast

from walletctl.cluster.topology import topology

F = TypeVar("F", bound=Callable[..., Any])


def on_proxy(name: str) -> Callable[[F], F]:
    def decorate(function: F) -> F:
        @functools.wraps(function)
        def dispatched(conn: Any, *args: Any, **kwargs: Any) -> Any:
            found = topology(conn)
            if found is None:
                return function(conn, *args, **kwargs)
            reads = import_module("walletctl.cluster.reads")
            return getattr(reads, name)(conn, found, *args, **kwargs)

        return cast(F, dispatched)

    return decorate
