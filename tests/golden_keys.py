"""The official checkpoint key lists in tests/data/golden/keys/ (format: README.md there)."""
import os

KEYS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "golden", "keys")


def read_key_list(name):
    """Entries (key, shape, dtype) in state_dict order and total_params of `name` (".txt" optional)."""
    if not name.endswith(".txt"):
        name += ".txt"
    entries = []
    total_params = None
    with open(os.path.join(KEYS_DIR, name)) as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if fields[0] == "total_params":
                total_params = int(fields[1])
            else:
                key, shape, dtype = fields
                entries.append((key, shape, dtype))
    assert total_params is not None, f"{name} has no total_params line"
    return entries, total_params


def state_dict_entries(model, prefix=""):
    """A model's state_dict in the key lists' format."""
    return [
        (prefix + key, str(tuple(value.shape)), str(value.dtype).replace("torch.", ""))
        for key, value in model.state_dict().items()
    ]
