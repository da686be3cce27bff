"""The one hook by which a core function behaves differently on a proxy.

``@on_proxy("name")`` on a core function: called with a connection to an ordinary walletctl
database, it runs as written; called with a connection to a PL/Proxy proxy, the function
of that name in walletctl.cluster.reads (or, for the whole-ledger procedures,
walletctl.cluster.procedures) runs instead, with the proxy's topology. A core function
reads the ledger's tables, which a proxy does not have; those modules say, for each, on
which partitions it runs and how their results combine.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib import import_module
from typing import Any, TypeVar, cast

from walletctl.cluster.topology import topology

F = TypeVar("F", bound=Callable[..., Any])

_CLUSTER_MODULES = ("walletctl.cluster.reads", "walletctl.cluster.procedures")


def on_proxy(name: str) -> Callable[[F], F]:
    def decorate(function: F) -> F:
        @functools.wraps(function)
        def dispatched(conn: Any, *args: Any, **kwargs: Any) -> Any:
            found = topology(conn)
            if found is None:
                return function(conn, *args, **kwargs)
            for module in _CLUSTER_MODULES:
                instead = getattr(import_module(module), name, None)
                if instead is not None:
                    return instead(conn, found, *args, **kwargs)
            raise AssertionError(f"no cluster version of {name}")

        return cast(F, dispatched)

    return decorate
