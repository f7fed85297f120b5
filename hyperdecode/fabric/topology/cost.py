"""Network CapEx from a topology's counts and a price table the user can override (JSON or YAML).

The default prices are assumptions for illustration (USD, rough street prices of Ethernet gear by port speed), not
vendor quotes: pass your own table (`--prices FILE`) for real decisions. Keys not given keep their default.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from .graph import COPPER, FIBER, Topology
from .optics import link_media

__all__ = ["DEFAULT_PRICES", "load_prices", "network_cost"]

DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "switch_port": {"100": 190.0, "200": 375.0, "400": 750.0, "800": 1500.0},  # per port of the switch's radix
    "optic": {"100": 150.0, "200": 350.0, "400": 650.0, "800": 1100.0},  # per transceiver, 2 per fiber link
    "fiber": {"any": 60.0},  # per fiber cable
    "copper": {"100": 60.0, "200": 110.0, "400": 180.0, "800": 300.0},  # per DAC cable
    "nic_port": {"100": 300.0, "200": 550.0, "400": 950.0, "800": 1600.0},  # per NIC port
}


def load_prices(path: str | Path | None = None) -> dict[str, dict[str, float]]:
    """The default table updated with a JSON or YAML file of the same shape."""
    prices = {k: dict(v) for k, v in DEFAULT_PRICES.items()}
    if path is None:
        return prices
    path = Path(path)
    try:
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml
            user = yaml.safe_load(text)
        else:
            user = json.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"{path}: price file not found") from None
    except Exception as e:
        raise ConfigError(f"{path}: cannot parse price table ({e})") from None
    if not isinstance(user, dict):
        raise ConfigError(f"{path}: expected a mapping of item -> {{speed: price}}")
    for item, table in user.items():
        if item not in prices:
            raise ConfigError(f"{path}: unknown price item '{item}' (known: {', '.join(prices)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: price item '{item}' must map {price_keys(item)} to a price in USD, e.g. "
                              f"{item}: {json.dumps(dict(list(DEFAULT_PRICES[item].items())[:1]))}; got {table!r}")
        for speed, price in table.items():
            if str(speed) != "any" and not str(speed).isdigit():
                raise ConfigError(f"{path}: {item} has key '{speed}'; the keys are {price_keys(item)}")
            if isinstance(price, bool) or not isinstance(price, (int, float)) or not 0 <= price < float("inf"):
                raise ConfigError(f"{path}: price of {item} at {speed} must be a non-negative number")
            prices[item][str(speed)] = float(price)
    return prices


def price_keys(item: str) -> str:
    """What the keys of a price item are, for messages."""
    return '"any"' if "any" in DEFAULT_PRICES[item] else 'port speeds in Gb/s ("400") or "any"'


def _price(prices: dict, item: str, gbps: int) -> float:
    table = prices[item]
    if "any" in table:
        return table["any"]
    if str(gbps) not in table:
        raise ConfigError(f"no price for {item} at {gbps}G (give one in the price table)")
    return table[str(gbps)]


def network_cost(topo: Topology, prices: dict | None = None, reach_servers: int | None = None) -> dict[str, Any]:
    """Line items (quantity × unit price), total and per-GPU network CapEx; with `reach_servers`, copper-capable
    links beyond copper's reach are priced as fibre with optics (optics.py).

    >>> from hyperdecode.fabric import zcube
    >>> c = network_cost(zcube(2))  # 4 GPUs, 4 switches of radix 4 at 200G
    >>> c["items"]["switches 4x200G"]["quantity"], c["items"]["optics 200G"]["quantity"]
    (4, 16)
    """
    prices = prices or DEFAULT_PRICES
    media = topo.link_medium if reach_servers is None else link_media(topo, reach_servers)
    items: dict[str, dict[str, float]] = {}

    def add(name: str, qty: int, unit: float) -> None:
        if qty:
            items[name] = {"quantity": int(qty), "unit": unit, "total": qty * unit}

    for radix, gbps in sorted(set(zip(topo.switch_radix.tolist(), topo.switch_gbps.tolist()))):
        qty = int(((topo.switch_radix == radix) & (topo.switch_gbps == gbps)).sum())
        add(f"switches {radix}x{gbps}G", qty, radix * _price(prices, "switch_port", gbps))
    for gbps in sorted(set(topo.link_gbps.tolist())):
        fiber = int(((topo.link_gbps == gbps) & (media == FIBER)).sum())
        copper = int(((topo.link_gbps == gbps) & (media == COPPER)).sum())
        add(f"optics {gbps}G", 2 * fiber, _price(prices, "optic", gbps))
        add(f"fiber cables {gbps}G", fiber, _price(prices, "fiber", gbps))
        add(f"copper cables {gbps}G", copper, _price(prices, "copper", gbps))
    add(f"NIC ports {topo.nic_gbps}G", topo.num_gpus * topo.nic_ports, _price(prices, "nic_port", topo.nic_gbps))
    total = sum(i["total"] for i in items.values())
    switches_optics = sum(i["total"] for k, i in items.items() if k.startswith(("switches", "optics")))
    return {"items": items, "total": total, "per_gpu": total / topo.num_gpus,
            "switches_and_optics": switches_optics}
