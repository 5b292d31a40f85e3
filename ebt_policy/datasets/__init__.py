"""ebt_policy.datasets"""
