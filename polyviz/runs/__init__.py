"""Dataset-scale runs (``polyviz.run``, ``polyviz run``): explain and score thousands of images,
streaming, resumable by construction, in this process or on Ray Data.

A run is one pipeline -- read, preprocess, explain, score, encode (:mod:`.pipeline`) -- over shards
of consecutive images (:mod:`.sources`), each written once and atomically (:mod:`.store`), by one of
two engines (:mod:`.engines.inprocess`, :mod:`.engines.ray_data`); then the results table, the
manifest (:mod:`.manifest`) and the summary page (:mod:`.summary`). No framework is imported here.
"""

from polyviz.runs.runner import RunResult, run
from polyviz.runs.sources import Item, list_inputs, write_shapes_folder
from polyviz.runs.store import load_attribution, read_results

__all__ = ["run", "RunResult", "Item", "list_inputs", "write_shapes_folder", "read_results", "load_attribution"]
