"""tools/README.md lists every tool in tools/ (a new tool must get its line)."""
import os
import re

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_tool_is_listed():
    tools = sorted(name for name in os.listdir(os.path.join(REPO_ROOT, "tools")) if name.endswith(".py"))
    with open(os.path.join(REPO_ROOT, "tools", "README.md")) as f:
        listed = set(re.findall(r"^\| `([^`]+\.py)` \|", f.read(), flags=re.M))
    assert [tool for tool in tools if tool not in listed] == []
    assert sorted(listed - set(tools)) == []
