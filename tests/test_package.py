def test_package_imports():
    import lungkit

    assert lungkit.__version__
