"""Python client for the Seaport service registry.

    from seaport import SeaportClient

    with SeaportClient(["127.0.0.1:9090"]) as client:
        listener, reg = client.bind("web@1.2.3", metadata={"zone": "a"})
        print(client.get("web@1.2.x", timeout=5)[0].address)
"""

from seaport.catalog import Catalog
from seaport.client import SeaportClient
from seaport.events import ClientEvents
from seaport.model import ClientEvent, Registration, SeaportError, Service, WatchEvent
from seaport.watch import WatchStream

__all__ = [
    "Catalog", "ClientEvent", "ClientEvents", "Registration", "SeaportClient", "SeaportError", "Service",
    "WatchEvent", "WatchStream",
]
