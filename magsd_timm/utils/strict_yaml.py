"""YAML settings files read as untrusted input: plain mappings of names to values, bounded in size.

A settings file (``-c FILE.yaml``, a run's ``args.yaml``) is small and flat. What YAML allows beyond
that is refused, since each is a way to make a loader lie or run out of memory:

* anchors and aliases (``&a`` / ``*a``): a few lines of nested aliases expand to gigabytes;
* a key given twice: PyYAML keeps the last one without a word;
* a file over MAX_BYTES.

An empty file is an empty mapping: no settings.
"""
from typing import Any, Dict

import yaml

__all__ = ['MAX_BYTES', 'YamlSettingsError', 'load_settings']

MAX_BYTES = 1 << 20  # a settings file is a few hundred bytes; args.yaml a few kilobytes


class YamlSettingsError(ValueError):
    """A settings file that is not a plain, bounded YAML mapping; the message says why."""


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors, aliases or repeated keys."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise YamlSettingsError(f'an alias (*name) at line {mark.line + 1}: aliases and anchors are not allowed in '
                                    'a settings file')
        event = self.peek_event()
        if getattr(event, 'anchor', None) is not None:
            raise YamlSettingsError(f'an anchor (&{event.anchor}) at line {event.start_mark.line + 1}: aliases and '
                                    'anchors are not allowed in a settings file')
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise YamlSettingsError(f'{key!r} is given twice (line {key_node.start_mark.line + 1})')
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_settings(text: str) -> Dict[str, Any]:
    """The mapping a settings file holds ({} when empty); YamlSettingsError for anything else."""
    if len(text.encode('utf-8', 'surrogatepass')) > MAX_BYTES:
        raise YamlSettingsError(f'over {MAX_BYTES:,} bytes: not a settings file')
    try:
        value = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise YamlSettingsError(f"cannot be read as YAML ({' '.join(str(e).split())})") from e
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise YamlSettingsError(f'not a mapping of settings to values (a {type(value).__name__})')
    return value
