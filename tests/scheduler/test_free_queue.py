from collections import OrderedDict

import pytest
from hypothesis import given, settings, strategies as st

from scheduler.free_queue import FreeBlockQueue


def test_pops_in_append_order_and_removes_from_the_middle():
    queue = FreeBlockQueue(8)
    for block_id in (5, 2, 7, 0):
        queue.append(block_id)
    queue.remove(7)
    assert list(queue) == [5, 2, 0] and len(queue) == 3
    assert 7 not in queue and 2 in queue
    assert [queue.popleft() for _ in range(3)] == [5, 2, 0]
    with pytest.raises(IndexError):
        queue.popleft()


def test_rejects_double_append_and_removing_an_absent_block():
    queue = FreeBlockQueue(4)
    queue.append(1)
    with pytest.raises(ValueError):
        queue.append(1)
    with pytest.raises(KeyError):
        queue.remove(3)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["append", "remove", "popleft"]), st.integers(0, 9)), max_size=60))
def test_matches_an_ordered_dict(ops):
    queue, model = FreeBlockQueue(10), OrderedDict()
    for op, block_id in ops:
        if op == "append" and block_id not in model:
            queue.append(block_id)
            model[block_id] = None
        elif op == "remove" and block_id in model:
            queue.remove(block_id)
            del model[block_id]
        elif op == "popleft" and model:
            assert queue.popleft() == model.popitem(last=False)[0]
        assert list(queue) == list(model) and len(queue) == len(model)
        assert all((i in queue) == (i in model) for i in range(10))
