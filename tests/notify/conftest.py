"""The Events tests run bgproxy on the `configmap` store, against the fake API server of the store tests."""

from __future__ import annotations

from tests.stores.conftest import api, kubeconfig

__all__ = ["api", "kubeconfig"]
