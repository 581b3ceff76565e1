"""The django-tenants half of ``bench/fleet.py``: its own virtualenv, a generated project
whose ``hr`` app mirrors ``hr15.sql`` as Django models, and timed runs of tenant creation
and ``migrate_schemas --executor=multiprocessing`` (no-op, then the additive change).

Everything lives in git-ignored folders: ``bench/.venv-django`` (django, django-tenants,
psycopg2-binary from PyPI) and ``bench/.django-work`` (the project, rewritten each run).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import _common as common

VENV = common.BENCH_DIR / ".venv-django"
WORK = common.BENCH_DIR / ".django-work"
PACKAGES = ["django>=4.2,<6", "django-tenants", "psycopg2-binary"]

SETTINGS = """
import os
SECRET_KEY = "bench-only"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["*"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {{"default": {{
    "ENGINE": "django_tenants.postgresql_backend",
    "NAME": {name!r}, "USER": {user!r}, "PASSWORD": {password!r},
    "HOST": {host!r}, "PORT": {port!r},
}}}}
DATABASE_ROUTERS = ("django_tenants.routers.TenantSyncRouter",)
SHARED_APPS = ["django_tenants", "customers", "django.contrib.contenttypes"]
TENANT_APPS = ["django.contrib.contenttypes", "hr"]
INSTALLED_APPS = list(SHARED_APPS) + [a for a in TENANT_APPS if a not in SHARED_APPS]
TENANT_MODEL = "customers.Client"
TENANT_DOMAIN_MODEL = "customers.Domain"
TENANT_MULTIPROCESSING_MAX_PROCESSES = os.cpu_count() or 2
MIDDLEWARE = []
ROOT_URLCONF = "benchproj.urls"
"""

CUSTOMERS = """
from django.db import models
from django_tenants.models import DomainMixin, TenantMixin


class Client(TenantMixin):
    name = models.CharField(max_length=100)
    auto_create_schema = True


class Domain(DomainMixin):
    pass
"""

HR_MODELS = """
from django.db import models


class Benefit(models.Model):
    code = models.CharField(max_length=30)
    name = models.CharField(max_length=120)
    provider = models.CharField(max_length=120)
    monthly_cost = models.DecimalField(max_digits=10, decimal_places=2)
    is_active = models.BooleanField()

    class Meta:
        db_table = "benefits"


class Document(models.Model):
    entity_type = models.CharField(max_length=60)
    entity_id = models.BigIntegerField()
    title = models.CharField(max_length=200)
    doc_type = models.CharField(max_length=40)
    storage_key = models.CharField(max_length=500)
    mime_type = models.CharField(max_length=100)
    size_bytes = models.BigIntegerField()
    uploaded_at = models.DateTimeField()
    expires_on = models.DateField(null=True)

    class Meta:
        db_table = "documents"


class Holiday(models.Model):
    date = models.DateField()
    name = models.CharField(max_length=120)
    region = models.CharField(max_length=20)
    is_half_day = models.BooleanField()

    class Meta:
        db_table = "holidays"


class LeaveType(models.Model):
    code = models.CharField(max_length=20)
    name = models.CharField(max_length=80)
    is_paid = models.BooleanField()
    max_days_per_year = models.DecimalField(max_digits=5, decimal_places=1, null=True)
    requires_approval = models.BooleanField()

    class Meta:
        db_table = "leave_types"


class Position(models.Model):
    title = models.CharField(max_length=120)
    grade = models.SmallIntegerField()
    min_salary = models.DecimalField(max_digits=12, decimal_places=2)
    max_salary = models.DecimalField(max_digits=12, decimal_places=2)
    is_active = models.BooleanField()
    created_at = models.DateTimeField()

    class Meta:
        db_table = "positions"


class AuditNote(models.Model):
    entity_type = models.CharField(max_length=60)
    entity_id = models.BigIntegerField()
    actor = models.CharField(max_length=150)
    action = models.CharField(max_length=40)
    note = models.TextField()
    created_at = models.DateTimeField()

    class Meta:
        db_table = "audit_notes"
        indexes = [models.Index(fields=["entity_type", "entity_id"], name="audit_notes_entity_idx")]


class Department(models.Model):
    code = models.CharField(max_length=20)
    name = models.CharField(max_length=120)
    cost_center = models.CharField(max_length=30, null=True)
    is_active = models.BooleanField()
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        db_table = "departments"
        constraints = [models.UniqueConstraint(fields=["code"], name="departments_code_uniq")]


class Employee(models.Model):
    employee_number = models.CharField(max_length=20)
    first_name = models.CharField(max_length=80)
    last_name = models.CharField(max_length=80)
    email = models.CharField(max_length=254)
    phone = models.CharField(max_length=40, null=True)
    date_of_birth = models.DateField(null=True)
    hire_date = models.DateField()
    termination_date = models.DateField(null=True)
    status = models.CharField(max_length=20)
    address = models.TextField()
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    department = models.ForeignKey(Department, models.CASCADE)
    manager = models.ForeignKey("self", models.SET_NULL, null=True)
    position = models.ForeignKey(Position, models.CASCADE)
{additive}
    class Meta:
        db_table = "employees"
        constraints = [
            models.UniqueConstraint(fields=["employee_number"], name="employees_number_uniq")
        ]
        indexes = [models.Index(fields=["last_name", "first_name"], name="employees_name_idx")]{additive_index}


class Goal(models.Model):
    title = models.CharField(max_length=200)
    description = models.TextField()
    due_date = models.DateField(null=True)
    progress = models.SmallIntegerField()
    status = models.CharField(max_length=20)
    created_at = models.DateTimeField()
    employee = models.ForeignKey(Employee, models.CASCADE)

    class Meta:
        db_table = "goals"


class Review(models.Model):
    reviewer_email = models.CharField(max_length=254)
    period_start = models.DateField()
    period_end = models.DateField()
    rating = models.SmallIntegerField(null=True)
    summary = models.TextField()
    status = models.CharField(max_length=20)
    submitted_at = models.DateTimeField(null=True)
    created_at = models.DateTimeField()
    employee = models.ForeignKey(Employee, models.CASCADE)

    class Meta:
        db_table = "reviews"


class Salary(models.Model):
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3)
    pay_frequency = models.CharField(max_length=20)
    effective_from = models.DateField()
    effective_to = models.DateField(null=True)
    created_at = models.DateTimeField()
    employee = models.ForeignKey(Employee, models.CASCADE)

    class Meta:
        db_table = "salaries"


class Timesheet(models.Model):
    week_start = models.DateField()
    status = models.CharField(max_length=20)
    total_hours = models.DecimalField(max_digits=6, decimal_places=2)
    submitted_at = models.DateTimeField(null=True)
    approved_by_email = models.CharField(max_length=254, null=True)
    employee = models.ForeignKey(Employee, models.CASCADE)

    class Meta:
        db_table = "timesheets"
        constraints = [
            models.UniqueConstraint(
                fields=["employee", "week_start"], name="timesheets_emp_week_uniq"
            )
        ]


class TimeEntry(models.Model):
    work_date = models.DateField()
    hours = models.DecimalField(max_digits=5, decimal_places=2)
    project_code = models.CharField(max_length=40)
    description = models.TextField()
    is_billable = models.BooleanField()
    timesheet = models.ForeignKey(Timesheet, models.CASCADE)

    class Meta:
        db_table = "time_entries"


class Enrollment(models.Model):
    coverage_level = models.CharField(max_length=20)
    employee_contribution = models.DecimalField(max_digits=10, decimal_places=2)
    enrolled_on = models.DateField()
    ended_on = models.DateField(null=True)
    benefit = models.ForeignKey(Benefit, models.CASCADE)
    employee = models.ForeignKey(Employee, models.CASCADE)

    class Meta:
        db_table = "enrollments"
        constraints = [
            models.UniqueConstraint(
                fields=["employee", "benefit"], name="enrollments_emp_benefit_uniq"
            )
        ]


class LeaveRequest(models.Model):
    start_date = models.DateField()
    end_date = models.DateField()
    days = models.DecimalField(max_digits=5, decimal_places=1)
    status = models.CharField(max_length=20)
    reason = models.TextField()
    decided_by_email = models.CharField(max_length=254, null=True)
    decided_at = models.DateTimeField(null=True)
    created_at = models.DateTimeField()
    employee = models.ForeignKey(Employee, models.CASCADE)
    leave_type = models.ForeignKey(LeaveType, models.CASCADE)

    class Meta:
        db_table = "leave_requests"
        indexes = [models.Index(fields=["status", "start_date"], name="leave_requests_status_idx")]
"""

ADDITIVE_FIELD = "    badge_code = models.CharField(max_length=32, null=True)\n"
ADDITIVE_INDEX = (
    "\n        indexes += [models.Index(fields=['badge_code'], name='employees_badge_code_idx')]"
)

CREATE_SCRIPT = """
import json, os, sys, time
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchproj.settings")
import django
django.setup()
from customers.models import Client
count, every = int(sys.argv[1]), int(sys.argv[2])
out = []
for i in range(count):
    t0 = time.perf_counter()
    Client(schema_name=f"d{i:06d}", name=f"d{i:06d}").save()
    out.append((time.perf_counter() - t0) * 1000.0)
    if (i + 1) % every == 0:
        print(f"django-tenants: {i + 1} tenants, last {out[-1]:.0f} ms", file=sys.stderr, flush=True)
print(json.dumps(out))
"""


def ensure_venv() -> Path:
    """The bench virtualenv's python, created and filled from PyPI on first use."""
    python = VENV / "bin" / "python"
    if not python.exists():
        common.note(f"creating {VENV.relative_to(common.REPO_DIR)} (django, django-tenants)")
        subprocess.run(["python3", "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *PACKAGES],
            check=True,
        )
    return python


def versions(python: Path) -> dict[str, str]:
    """Installed versions of the peer's packages."""
    out = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    wanted = {"django", "django-tenants", "psycopg2-binary"}
    return {p["name"].lower(): p["version"] for p in json.loads(out) if p["name"].lower() in wanted}


def write_project(url: str, *, additive: bool) -> None:
    """(Re)write the generated Django project for database ``url``."""
    parts = urlsplit(url)
    files = {
        "manage.py": (
            "import os, sys\nos.environ.setdefault('DJANGO_SETTINGS_MODULE', "
            "'benchproj.settings')\nfrom django.core.management import "
            "execute_from_command_line\nexecute_from_command_line(sys.argv)\n"
        ),
        "benchproj/__init__.py": "",
        "benchproj/urls.py": "urlpatterns = []\n",
        "benchproj/settings.py": SETTINGS.format(
            name=parts.path.lstrip("/"),
            user=parts.username or "postgres",
            password=parts.password or "",
            host=parts.hostname or "127.0.0.1",
            port=str(parts.port or 5432),
        ),
        "customers/__init__.py": "",
        "customers/models.py": CUSTOMERS,
        "hr/__init__.py": "",
        "hr/models.py": HR_MODELS.format(
            additive=ADDITIVE_FIELD if additive else "",
            additive_index=ADDITIVE_INDEX if additive else "",
        ),
        "bench_create.py": CREATE_SCRIPT,
    }
    for name, text in files.items():
        path = WORK / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def manage(python: Path, *args: str) -> float:
    """Run ``manage.py ARGS`` in the project; seconds it took."""
    t0 = time.perf_counter()
    subprocess.run(
        [str(python), "manage.py", *args],
        cwd=WORK,
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(WORK)},
    )
    return time.perf_counter() - t0


def run(url: str, tenants: int, schema_file: Path) -> dict[str, Any]:
    """Create ``tenants`` tenants, then time a no-op and an additive ``migrate_schemas``."""
    python = ensure_venv()
    if WORK.exists():
        shutil.rmtree(WORK)
    write_project(url, additive=False)
    manage(python, "makemigrations", "customers", "hr", "-v", "0")
    manage(python, "migrate_schemas", "--shared", "-v", "0")
    common.note(f"django-tenants: creating {tenants} tenants ({schema_file.name} as models)")
    t0 = time.perf_counter()
    done = subprocess.run(
        [str(python), "bench_create.py", str(tenants), "100"],
        cwd=WORK,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(WORK)},
    )
    create_s = time.perf_counter() - t0
    create_ms = json.loads(done.stdout.strip().splitlines()[-1])
    common.note("django-tenants: migrate_schemas (no-op)")
    noop_s = manage(python, "migrate_schemas", "--executor=multiprocessing", "-v", "0")
    write_project(url, additive=True)
    manage(python, "makemigrations", "hr", "-v", "0")
    common.note("django-tenants: migrate_schemas (additive)")
    additive_s = manage(python, "migrate_schemas", "--executor=multiprocessing", "-v", "0")
    return {
        "tenants": tenants,
        "versions": versions(python),
        "create_s": create_s,
        "create_ms": create_ms,
        "noop_s": noop_s,
        "additive_s": additive_s,
    }
