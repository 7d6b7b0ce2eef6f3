"""Python client for the Seaport service registry.

    from seaport import SeaportClient

    with SeaportClient(["127.0.0.1:9090"]) as client:
        reg = client.register("web@1.2.3", metadata={"zone": "a"})
        print(client.get("web@1.2.x", timeout=5)[0].address)
"""

from seaport.client import Registration, SeaportClient, SeaportError, Service, WatchEvent

__all__ = ["Registration", "SeaportClient", "SeaportError", "Service", "WatchEvent"]
