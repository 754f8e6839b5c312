from sandbox.sysroot import build_sysroot, cpu_list, topology


def test_linux_cpu_numbering():
    layout = topology(2, 2, 4, 2)
    assert len(layout) == 32
    assert [c for c, _s, n, _core in layout if n == 1] == [4, 5, 6, 7, 20, 21, 22, 23]
    assert cpu_list([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


def test_rebuild_keeps_written_values(tmp_path):
    root = build_sysroot(str(tmp_path))
    (tmp_path / "proc/sys/vm/swappiness").write_text("1\n")
    build_sysroot(root)
    assert (tmp_path / "proc/sys/vm/swappiness").read_text() == "1\n"
