"""Helpers the tests share: the emulated cluster, operator inputs, helm/kubectl, model builders."""
