"""Data, not code: what goes to the Hub (card templates, published model repos), installed as magsd_timm.hub_content.

The code that renders the cards and pushes and pulls repos is magsd_timm.hub; this file only lets the
folder be installed beside it (pyproject.toml), so that the published tags load with no network.
"""
