"""Parity: how two backends' answers to one request are compared (`compare`), what the
drift catalogue proposes from what differs (`drift`), and the evidence and verdicts kept of
it (`verdicts`). The lowest layer above the vocabulary: pure but for the verdicts' files."""
