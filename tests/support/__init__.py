"""What the tests share, apart from pytest's fixtures (tests/conftest.py):

- ``helpers``: ground truth (plain torch.load, sha256, bit-exact state comparison), running
  the app in a fresh process, reading its output;
- ``app_cases``: one refused command, in process (``refused_in_process``) or through the app
  (``rejected``), and the inputs such cases need;
- ``crafted``: checkpoints written at the pickle-opcode level, as an attacker writes them;
- ``fuzz_worker``: the forked runner of the pickle fuzzer (``python -m tests.support.fuzz_worker``).

Nothing is imported here: the fuzz worker must not import more than it needs.
"""
