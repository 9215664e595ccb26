"""The public surface: __all__ is sorted, complete, and every name in CONTRACT.md exists."""

import tensorwire as tw

CONTRACT = {
    "Client", "Server", "register_op", "TensorwireError", "RemoteError", "ProtocolError",
    "TimeoutError", "ConnectionClosed", "AuthError", "QuotaExceeded",
}  # fmt: skip


def test_all_is_sorted_and_complete():
    public = {name for name in vars(tw) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(tw, name)).__name__ == "module"}
    assert sorted(tw.__all__) == tw.__all__
    assert set(tw.__all__) - {"__version__"} == public - modules


def test_contract_names_exist():
    assert CONTRACT <= set(tw.__all__)


def test_error_tree():
    for name in ("RemoteError", "ProtocolError", "TimeoutError", "ConnectionClosed",
                 "AuthError", "QuotaExceeded", "ServerBusy", "TransportError"):
        assert issubclass(getattr(tw, name), tw.TensorwireError)
    assert issubclass(tw.TimeoutError, TimeoutError)
    assert issubclass(tw.VersionMismatch, tw.ProtocolError)
