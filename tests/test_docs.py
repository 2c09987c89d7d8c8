"""The documentation's links: every relative link in README.md, BENCHMARKS.md and docs/*.md names
a file of this repository, and every #anchor a heading of the file it points into (as GitHub
makes anchors from headings). No server is started; standard library only."""

import os
import re
import unittest

from harness import REPO

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def documents():
    docs = [os.path.join(REPO, "README.md"), os.path.join(REPO, "BENCHMARKS.md")]
    d = os.path.join(REPO, "docs")
    docs += sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".md"))
    return docs


def anchors(path):
    """GitHub's anchors: a heading, lowercased, without punctuation but '-' and '_', blanks to '-'."""
    out = set()
    in_code = False
    with open(path) as f:
        for line in f:
            if line.startswith("```"):
                in_code = not in_code
            m = None if in_code else re.match(r"#{1,6} (.*)", line.rstrip("\n"))
            if m:
                text = m.group(1).strip().lower()
                out.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return out


def links(path):
    in_code = False
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.startswith("```"):
                in_code = not in_code
                continue
            if not in_code:
                for target in LINK.findall(line):
                    yield n, target


class Links(unittest.TestCase):
    def test_every_relative_link_and_anchor_resolves(self):
        checked = 0
        for doc in documents():
            for n, target in links(doc):
                if re.match(r"[a-z]+://|mailto:", target):
                    continue
                where = f"{os.path.relpath(doc, REPO)}:{n}: {target}"
                file, _, anchor = target.partition("#")
                dest = os.path.normpath(os.path.join(os.path.dirname(doc), file)) if file else doc
                self.assertTrue(os.path.exists(dest), f"{where}: no such file")
                if anchor and dest.endswith(".md"):
                    self.assertIn(anchor, anchors(dest), f"{where}: no such heading")
                checked += 1
        self.assertGreater(checked, 10, "the documents hold links; none found means the parser broke")

    def test_the_readme_points_to_each_guide(self):
        with open(os.path.join(REPO, "README.md")) as f:
            readme = f.read()
        for doc in documents()[2:]:
            self.assertIn(f"(docs/{os.path.basename(doc)})", readme, f"README.md does not link {doc}")


if __name__ == "__main__":
    unittest.main()
