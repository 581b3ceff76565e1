"""Request and response bodies of the HR API."""

from __future__ import annotations

from datetime import date, datetime
from typing import Generic, Literal, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, EmailStr, Field, model_validator

from tenantry.web import PgText, RowId

T = TypeVar("T")
LeaveKind = Literal["vacation", "sick", "parental", "unpaid"]


class Page(BaseModel, Generic[T]):
    """One page of a list; pass ``next`` back as ``?after=`` for the following page."""

    items: list[T]
    next: int | None = None


class DepartmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: PgText = Field(min_length=1, max_length=120)


class Department(DepartmentIn):
    id: int
    headcount: int = 0
    event_headcount: int | None = None
    """The headcount the ``hr`` events consumer keeps (one department's read only)."""
    created_at: datetime


class EmployeeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    first_name: PgText = Field(min_length=1, max_length=80)
    last_name: PgText = Field(min_length=1, max_length=80)
    email: EmailStr
    title: PgText = Field(default="", max_length=120)
    department_id: RowId
    hired_on: date


class EmployeePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    first_name: PgText | None = Field(default=None, min_length=1, max_length=80)
    last_name: PgText | None = Field(default=None, min_length=1, max_length=80)
    email: EmailStr | None = None
    title: PgText | None = Field(default=None, max_length=120)
    department_id: RowId | None = None
    hired_on: date | None = None


class Employee(BaseModel):
    id: int
    first_name: str
    last_name: str
    email: str
    title: str
    department_id: int
    hired_on: date
    created_at: datetime
    updated_at: datetime


class LeaveRequestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    employee_id: RowId
    starts_on: date
    ends_on: date
    kind: LeaveKind

    @model_validator(mode="after")
    def _ordered(self) -> LeaveRequestIn:
        if self.ends_on < self.starts_on:
            raise ValueError("ends_on must not be before starts_on")
        return self


class LeaveRequest(BaseModel):
    id: int
    employee_id: int
    starts_on: date
    ends_on: date
    kind: str
    status: str
    created_at: datetime
    decided_at: datetime | None = None


class Activity(BaseModel):
    id: int
    event_id: UUID
    employee_id: int
    kind: str
    summary: str
    occurred_at: datetime
