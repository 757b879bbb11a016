"""What pyproject.toml cannot say: the shipped policies (policies/ in a checkout) go into the
wheel as the data folder guard/policies/, where guard.policy.shipped finds them."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["guard", "guard.*"]), "guard.policies"],
    package_dir={"guard.policies": "policies"},
)
