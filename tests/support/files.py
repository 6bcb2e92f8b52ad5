"""What a command left in a folder, as a user listing it sees it."""
from pathlib import Path
from typing import List


def outputs_in(folder: Path) -> List[str]:
    """The names in a folder, sorted, without the lock files that writers leave beside their outputs."""
    return sorted(p.name for p in Path(folder).iterdir() if not (p.name.startswith('.') and p.name.endswith('.lock')))
