"""State in a Kubernetes ConfigMap, shared by every replica and by GitOps.

The rooms: `codec` (pure: ConfigMap data <-> state, the keys), `client` (the Kubernetes client, bounded calls,
error wording, backoff), `watch` (the watch thread), `store` (the Store interface: load, write, changes).

The ConfigMap (default `bgproxy-state`) holds:

- `active: blue|green`: the user-facing key, what people and Argo CD edit;
- `state`: JSON of bgproxy's whole state (active, previous, revision, updated_at, source, reason, ...);
- `reason`: the reason of the last flip, readable with `kubectl get`.

When `active` agrees with the `state` blob, the blob is the state; when it does not, someone edited `active` by
hand or through Git: that is a flip (source `configmap`), and the replica writes the normalised blob back (with a
resourceVersion precondition; a 409 means another replica did it first) so revisions stay monotonic and every
replica settles on the same state object. A missing or unknown `active` is logged, counted in
`config_errors_total{source="configmap"}` and ignored. A deleted ConfigMap keeps the last state, and the replicas
put it back holding that state (else a replica starting later would create it with BGPROXY_INITIAL_ACTIVE and flip
everyone).

Start-up: `load` waits, and the replica stays not ready, until the API server answers with a valid colour (or a
404, and the ConfigMap is then created with the initial state); it never serves a guessed colour.

Threads: the official client is synchronous. One daemon thread lists, then watches the one ConfigMap (field
selector on its name) and hands every event to the event loop with `call_soon_threadsafe`; reads and writes run
in worker threads (`asyncio.to_thread`). Everything that decides lives on the event loop, in the order events
arrive there. The data plane never waits on the API server.

Ordering: an admin write is applied as soon as the API server accepts it; its watch event comes later, possibly
after older events. Events (and relists) whose resourceVersion is not newer than the newest one already applied
are skipped. This compares resourceVersions as integers: kube-apiserver's are etcd revisions, a monotonically
increasing counter, which Kubernetes 1.35 made a documented guarantee (KEP-5504, "Comparable Resource Version").
A server that sends non-numeric versions still works, in arrival order, without that protection.
"""

from .store import ConfigMapStore

__all__ = ["ConfigMapStore"]
